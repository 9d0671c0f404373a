-- +goose Up
-- conveyor:contract
SET lock_timeout = '5s';
DROP TABLE IF EXISTS audit_events_old;
