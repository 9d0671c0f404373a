-- +goose Up
SET lock_timeout = '5s';
-- expect: drop-table-in-expand
DROP TABLE IF EXISTS audit_events_old;
