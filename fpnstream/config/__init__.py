"""The one typed configuration (pydantic): YAML file -> CLI override layer -> AppConfig,
validated, with one-line errors that never echo values."""
