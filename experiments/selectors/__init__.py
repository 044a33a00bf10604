"""Read side: query functions used by views, API and tasks."""
