"""Mining: YAKE keywords, class-name and spaCy concept vocabularies, caption x vocabulary
matrices; every vocabulary is a versioned artifact whose tables are DuckDB views."""
