-- +goose Up
CREATE OR REPLACE VIEW order_totals AS
SELECT o.id AS order_id,
       o.customer_id,
       coalesce(sum(l.quantity * l.unit_price), 0) AS lines_total
FROM orders o
LEFT JOIN order_lines l ON l.order_id = o.id
GROUP BY o.id, o.customer_id;

-- +goose Down
DROP VIEW order_totals;
