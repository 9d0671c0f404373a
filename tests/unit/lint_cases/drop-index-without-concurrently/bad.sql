-- +goose Up
SET lock_timeout = '5s';
-- expect: drop-index-without-concurrently
DROP INDEX orders_legacy_idx;
