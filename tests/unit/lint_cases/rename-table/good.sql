-- +goose Up
-- The old release keeps reading and writing line_items through the view.
SET LOCAL lock_timeout = '5s';
ALTER TABLE line_items RENAME TO order_lines;
CREATE VIEW line_items AS SELECT * FROM order_lines;
