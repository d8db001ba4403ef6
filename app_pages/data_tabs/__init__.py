"""The Data page's tabs and its job helpers (modules, not pages: st.navigation never lists them)."""
