-- +goose NO TRANSACTION
-- +goose Up
BEGIN;
-- expect: concurrently-in-transaction
DROP INDEX CONCURRENTLY orders_status_idx;
COMMIT;
