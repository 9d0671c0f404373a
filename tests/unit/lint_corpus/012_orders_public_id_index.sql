-- +goose NO TRANSACTION
-- +goose Up
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_public_id_key ON orders (public_id);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS orders_public_id_key;
