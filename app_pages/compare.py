"""Compare page: work in progress this session."""
import streamlit as st

st.title("Compare")
st.info("Not built yet.")
