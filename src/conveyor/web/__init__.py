"""The dashboard: server-rendered pages (Jinja2 + htmx), live through the API's event stream."""
