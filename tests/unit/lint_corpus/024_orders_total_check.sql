-- +goose NO TRANSACTION
-- +goose Up
SET lock_timeout = '3s';
ALTER TABLE orders ADD CONSTRAINT orders_total_cap CHECK (total < 1000000) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_cap;

-- +goose Down
SET lock_timeout = '3s';
ALTER TABLE orders DROP CONSTRAINT orders_total_cap;
