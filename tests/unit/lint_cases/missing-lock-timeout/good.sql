-- +goose Up
SET LOCAL lock_timeout = '3s';
ALTER TABLE orders ADD COLUMN note text;
