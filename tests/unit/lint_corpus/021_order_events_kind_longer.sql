-- +goose Up
SET LOCAL lock_timeout = '3s';
-- conveyor:allow change-column-type because a longer varchar keeps the bytes: no rewrite, a moment's lock
ALTER TABLE order_events ALTER COLUMN kind TYPE varchar(64);

-- +goose Down
SELECT 1;
