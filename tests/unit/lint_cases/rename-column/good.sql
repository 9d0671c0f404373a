-- +goose Up
SET lock_timeout = '5s';
ALTER TABLE customers ADD COLUMN full_name text;
