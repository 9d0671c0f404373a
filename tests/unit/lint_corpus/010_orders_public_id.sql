-- +goose Up
SET LOCAL lock_timeout = '3s';
-- Nullable and without a default first: a volatile default would rewrite the table.
ALTER TABLE orders ADD COLUMN public_id uuid;
ALTER TABLE orders ALTER COLUMN public_id SET DEFAULT gen_random_uuid();

-- +goose Down
SET LOCAL lock_timeout = '3s';
ALTER TABLE orders DROP COLUMN public_id;
