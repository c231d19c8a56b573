"""HTTP serving: a FastAPI app (REST API and the web page) over one run or a cascade."""
