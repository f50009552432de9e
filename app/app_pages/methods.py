"""methods (being written)."""
import streamlit as st

st.title("methods")
st.info("Coming soon.")
