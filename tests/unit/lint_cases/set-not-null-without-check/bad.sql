-- +goose Up
-- conveyor:contract
SET lock_timeout = '5s';
-- expect: set-not-null-without-check
ALTER TABLE orders ALTER COLUMN currency SET NOT NULL;
