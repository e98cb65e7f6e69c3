"""Embeddings page: work in progress this session."""
import streamlit as st

st.title("Embeddings")
st.info("Not built yet.")
