-- +goose Up
SET lock_timeout = '5s';
-- expect: add-column-volatile-default
ALTER TABLE orders ADD COLUMN ref text DEFAULT shop.next_reference();
