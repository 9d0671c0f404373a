-- +goose Up
SET lock_timeout = '5s';
-- expect: change-column-type
ALTER TABLE payments ALTER COLUMN amount TYPE numeric(12, 2);
