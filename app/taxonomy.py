def category_for(description: str) -> str:
    return "other"
