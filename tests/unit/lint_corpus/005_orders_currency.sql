-- +goose Up
SET LOCAL lock_timeout = '3s';
-- A constant default is stored in the catalog (PostgreSQL 11+): no rewrite.
ALTER TABLE orders ADD COLUMN currency char(3) NOT NULL DEFAULT 'EUR';

-- +goose Down
SET LOCAL lock_timeout = '3s';
ALTER TABLE orders DROP COLUMN currency;
