{{/*
The alert rules: the one source for the PrometheusRule (prometheusrule.yaml) and the plain
Prometheus rules file gitops/prometheus/forgetless.rules.yaml (rendered from this by
hack/chart_sync.py with the default values; promtool checks both in tests/component/test_alert_rules.py).
Metric names: core/forgetless/metrics.py and trainer/forgetless_trainer/live_metrics.py.
*/}}
{{- define "forgetless.alertLabels" -}}
severity: {{ .alert.severity }}
{{- with .root.Values.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "forgetless.alertRuleGroups" -}}
{{- $a := .Values.prometheusRule.alerts -}}
groups:
  - name: forgetless
    rules:
      {{- with $a.gateBlocked }}{{ if .enabled }}
      - alert: ForgetlessGateBlocked
        expr: max by (namespace, finetunejob) (forgetless_gate_passed) == 0
        for: {{ .for }}
        labels:
          {{- include "forgetless.alertLabels" (dict "alert" . "root" $) | nindent 10 }}
        annotations:
          summary: {{ `FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }} was blocked by the forgetting gate` | quote }}
          description: {{ `The regression gate failed, so the fine-tuned model was not promoted. See kubectl describe ftj -n {{ $labels.namespace }} {{ $labels.finetunejob }} (status.gate.reasons).` | quote }}
      {{- end }}{{ end }}
      {{- with $a.forgetting }}{{ if .enabled }}
      - alert: ForgetlessForgettingAboveThreshold
        expr: |-
          max by (namespace, finetunejob, category) (forgetless_forgetting_ratio{category!~"task|mean"}) > {{ .maxCategoryDrop }}
          or
          max by (namespace, finetunejob, category) (forgetless_forgetting_ratio{category="mean"}) > {{ .maxMeanDrop }}
        for: {{ .for }}
        labels:
          {{- include "forgetless.alertLabels" (dict "alert" . "root" $) | nindent 10 }}
        annotations:
          summary: {{ `FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }} forgot {{ $labels.category }}` | quote }}
          description: {{ printf "%s (thresholds: %v per category, %v mean)." "The {{ $labels.category }} score dropped by {{ $value | humanizePercentage }} after fine-tuning" .maxCategoryDrop .maxMeanDrop | quote }}
      {{- end }}{{ end }}
      {{- with $a.trainingStalled }}{{ if .enabled }}
      - alert: ForgetlessTrainingStalled
        expr: time() - max by (namespace, finetunejob) (forgetless_train_last_step_timestamp_seconds > 0) > {{ mul (int .minutes) 60 }}
        for: {{ .for }}
        labels:
          {{- include "forgetless.alertLabels" (dict "alert" . "root" $) | nindent 10 }}
        annotations:
          summary: {{ `Training of {{ $labels.namespace }}/{{ $labels.finetunejob }} is stalled` | quote }}
          description: {{ printf "%s %d minutes (last step {{ $value | humanizeDuration }} ago)." "The trainer made no optimizer step for more than" (int .minutes) | quote }}
      {{- end }}{{ end }}
      {{- with $a.reconcileErrors }}{{ if .enabled }}
      - alert: ForgetlessReconcileErrors
        expr: sum by (namespace) (rate(forgetless_reconcile_errors_total[{{ .window }}])) > 0
        for: {{ .for }}
        labels:
          {{- include "forgetless.alertLabels" (dict "alert" . "root" $) | nindent 10 }}
        annotations:
          summary: {{ `The forgetless operator keeps failing to reconcile FineTuneJobs in {{ $labels.namespace }}` | quote }}
          description: {{ `{{ $value | humanize }} reconcile errors per second; see the operator's logs and kubectl get events -n {{ $labels.namespace }}.` | quote }}
      {{- end }}{{ end }}
      {{- with $a.jobFailed }}{{ if .enabled }}
      - alert: ForgetlessJobFailed
        expr: sum by (namespace) (forgetless_finetunejobs{phase="Failed"}) > 0
        for: {{ .for }}
        labels:
          {{- include "forgetless.alertLabels" (dict "alert" . "root" $) | nindent 10 }}
        annotations:
          summary: {{ `{{ $value }} FineTuneJob(s) failed in {{ $labels.namespace }}` | quote }}
          description: {{ `kubectl get ftj -n {{ $labels.namespace }} shows which; status.message and the stage Job's logs say why.` | quote }}
      {{- end }}{{ end }}
{{- end -}}
