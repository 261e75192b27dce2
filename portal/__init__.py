"""Content portal and source server — arrive with issues 6 and 7."""
