-- +goose Up
SET lock_timeout = '5s';
-- expect: truncate
TRUNCATE sessions;
