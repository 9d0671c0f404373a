-- +goose Up
SET lock_timeout = '5s';
-- expect: drop-column-in-expand
ALTER TABLE users DROP COLUMN legacy_name;

-- +goose Down
ALTER TABLE users ADD COLUMN legacy_name text;
