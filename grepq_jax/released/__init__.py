"""The paper's released GRepQ model: its files fetched into the cache and packaged
into a scoring model folder.
"""
