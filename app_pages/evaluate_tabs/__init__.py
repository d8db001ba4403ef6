"""The Evaluate page's panels (modules, not pages: st.navigation never lists them)."""
