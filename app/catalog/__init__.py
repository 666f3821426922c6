"""Product catalog: documents and the search index lifecycle, catalog Functions, hybrid search,
vectorizers."""
