-- +goose NO TRANSACTION
-- +goose Up
SET lock_timeout = '3s';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS customers_email_exact_key ON customers (email);
ALTER TABLE customers ADD CONSTRAINT customers_email_exact_key UNIQUE USING INDEX customers_email_exact_key;

-- +goose Down
SET lock_timeout = '3s';
ALTER TABLE customers DROP CONSTRAINT customers_email_exact_key;
