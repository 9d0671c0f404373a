-- conveyor:contract
-- v42 stopped reading legacy_name; it is dropped once the old color is gone.
-- +goose Up
SET lock_timeout = '5s';
ALTER TABLE users DROP COLUMN legacy_name;

-- +goose Down
ALTER TABLE users ADD COLUMN legacy_name text;
