-- +goose Up
SET lock_timeout = '5s';
-- expect: add-column-not-null-no-default
ALTER TABLE orders ADD COLUMN currency char(3) NOT NULL;
