"""collabfeat.trainer"""
