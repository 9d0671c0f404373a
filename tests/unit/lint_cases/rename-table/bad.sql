-- +goose Up
SET lock_timeout = '5s';
-- expect: rename-table
ALTER TABLE line_items RENAME TO order_lines;
