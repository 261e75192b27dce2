"""Cacher daemon — arrives with issue 7."""
