// Entry point of the page.
