-- +goose Up
SET lock_timeout = '5s';
-- expect: rename-column
ALTER TABLE customers RENAME COLUMN name TO full_name;
