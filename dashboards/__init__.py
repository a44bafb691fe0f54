"""Run comparison: MLflow runs to tables in the paper's layouts, plots and HTML reports."""
