-- +goose NO TRANSACTION
-- +goose Up
-- SET LOCAL has no effect outside a transaction block.
SET LOCAL lock_timeout = '5s';
-- expect: missing-lock-timeout
ALTER TABLE orders ADD COLUMN note text;
