-- +goose Up
CREATE TABLE IF NOT EXISTS settings (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settings (key, value) VALUES
    ('checkout.max_lines', '200'),
    ('checkout.currency', '"EUR"')
ON CONFLICT (key) DO NOTHING;
GRANT SELECT ON settings TO PUBLIC;

-- +goose Down
DROP TABLE settings;
