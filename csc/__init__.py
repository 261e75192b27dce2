"""Content sharing client — arrives with issue 7."""
