-- +goose Up
SET lock_timeout = '5s';
ALTER TABLE orders ADD COLUMN note text;
RESET lock_timeout;
-- expect: missing-lock-timeout
ALTER TABLE orders ADD COLUMN note2 text;
