-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION touch_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at := now();  -- a ';' inside the body
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION order_total(order_id bigint) RETURNS numeric
LANGUAGE SQL STABLE
BEGIN ATOMIC
    SELECT coalesce(sum(amount), 0) FROM order_lines WHERE order_lines.order_id = order_total.order_id;
END;
-- +goose StatementEnd

COMMENT ON FUNCTION touch_updated_at() IS E'sets updated_at; used by \'orders\' triggers';

-- +goose Down
DROP FUNCTION order_total(bigint);
DROP FUNCTION touch_updated_at();
