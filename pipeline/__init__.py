"""collabfeat.pipeline"""
