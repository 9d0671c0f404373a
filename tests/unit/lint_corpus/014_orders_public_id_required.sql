-- conveyor:contract
-- The old release did not write public_id; held until it is gone.
-- +goose Up
SET LOCAL lock_timeout = '3s';
-- The validated CHECK from 013 lets PostgreSQL 12+ skip the scan.
ALTER TABLE orders ALTER COLUMN public_id SET NOT NULL;
ALTER TABLE orders DROP CONSTRAINT orders_public_id_not_null;

-- +goose Down
SET LOCAL lock_timeout = '3s';
ALTER TABLE orders ALTER COLUMN public_id DROP NOT NULL;
