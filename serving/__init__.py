"""collabfeat.serving"""
