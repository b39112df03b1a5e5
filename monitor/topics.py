"""The topics' names, without the prefix (`Settings.topic` adds it): the one list every driver and tool reads.

>>> EVENT_TOPICS
('engagement', 'consent', 'rule-changes')
>>> INPUT_TOPICS + OUTPUT_TOPICS
('engagement', 'consent', 'rule-changes', 'incident-actions', 'incidents', 'plan-updates', 'dead-letters')
"""

ENGAGEMENT = "engagement"
CONSENT = "consent"
RULE_CHANGES = "rule-changes"
INCIDENT_ACTIONS = "incident-actions"
INCIDENTS = "incidents"
PLAN_UPDATES = "plan-updates"
DEAD_LETTERS = "dead-letters"

EVENT_TOPICS = (ENGAGEMENT, CONSENT, RULE_CHANGES)  # what producers write; the plan's feeds
INPUT_TOPICS = (*EVENT_TOPICS, INCIDENT_ACTIONS)
OUTPUT_TOPICS = (INCIDENTS, PLAN_UPDATES, DEAD_LETTERS)
