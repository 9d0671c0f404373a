-- +goose NO TRANSACTION
-- +goose Up
SET lock_timeout = '3s';
ALTER TABLE orders ADD CONSTRAINT orders_public_id_not_null
    CHECK (public_id IS NOT NULL) NOT VALID;
-- Its own transaction: the scan takes SHARE UPDATE EXCLUSIVE, writes go on.
ALTER TABLE orders VALIDATE CONSTRAINT orders_public_id_not_null;

-- +goose Down
SET lock_timeout = '3s';
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_public_id_not_null;
