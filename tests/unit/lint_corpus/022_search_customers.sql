-- +goose NO TRANSACTION
-- +goose Up
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_full_name_trgm_idx
    ON customers USING gin (full_name gin_trgm_ops);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS customers_full_name_trgm_idx;
