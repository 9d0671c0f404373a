-- +goose Up
-- conveyor:contract
SET lock_timeout = '5s';
DROP TABLE analytics_scratch;
