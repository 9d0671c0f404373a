-- +goose NO TRANSACTION
-- +goose Up
-- expect: drop-database
DROP DATABASE analytics_scratch;
